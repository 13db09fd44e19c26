"""Runnable examples on small models and data that ship offline, from the repository root:

``python -m examples.bn_only`` (train only BatchNorm) and
``python -m examples.test_time_adaptation`` (TENT). ``examples.resnet`` is the one ResNet
of the examples and of the benchmarks' end-to-end step; ``examples.images`` the data.
"""
