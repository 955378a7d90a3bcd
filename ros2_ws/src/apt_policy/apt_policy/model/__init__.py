"""The PyTorch APT policy: experts with gated fusion, flow matching, bundle I/O and APTPolicy.

Import the submodules directly (``apt_policy.model.apt``, ``.bundle``, ``.policy``); this package
imports nothing eagerly so that ``apt_policy.model.backbone`` stays independent.
"""
