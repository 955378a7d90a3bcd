"""Control core: chunk schedule, blending, action semantics, safety filter, watchdog, controller, rate loop.

Plain Python + numpy (no ROS, no torch); every time is passed in explicitly so all of it runs on a simulated
clock in tests. See docs/CONTROL.md for the API the node uses and the guarantees.
"""
