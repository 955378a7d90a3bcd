"""APT-ROS: the APT vision-language-action policy from trained weights to a Franka arm."""

__version__ = "0.1.0"
