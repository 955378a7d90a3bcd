"""Torch-free, ROS-free pieces shared by training, export and every runtime backend.

``config`` (the bundle's config.json schema), ``normalize`` (state/action normalisation) and
``preprocess`` (image resize/normalise, instruction tokenisation). Only numpy, OpenCV and tokenizers.
"""
