"""The recorder node: ROS 2 topics -> a rosbag2 MCAP recording (see docs/RECORDING.md)."""
