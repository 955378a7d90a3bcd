"""The PyTorch APT model: experts with gated fusion, flow matching, the deployment backbone and bundle I/O.

Import the submodules directly (``apt_policy.model.apt``, ``.bundle``, ``.flow``); this package imports
nothing eagerly so that ``apt_policy.model.backbone`` stays independent. The model serves the Policy contract
through ``apt_policy.runtime.torch_backend.APTPolicy``; nothing here imports the runtime.
"""
