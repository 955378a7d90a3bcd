"""Recorded data offline, without ROS: rosbag2 MCAP recordings (bag), message schemas (msgdefs, messages),
episodes, LeRobotDataset export (lerobot) and model replay (replay); ``apt-data`` / ``apt-replay`` (cli)."""
