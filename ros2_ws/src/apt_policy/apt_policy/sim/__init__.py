"""Simulated hardware: the ROS-free simulated arm (joint_trajectory_controller semantics), the fake_franka and
fake_camera nodes that speak the real robot's interfaces over DDS, and the demo's observer node (probe)."""
