"""last_lite: small skeleton action-recognition networks, from training to the edge.

Importing the package imports nothing heavy: the edge runtime (numpy + onnxruntime) shares it.
"""

__version__ = "0.1.0"
