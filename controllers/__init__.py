"""Camera control: action strings, live keys and mouse, scripted paths, pose files, conditioning tensors.

Depends on numpy and torch only.
"""
