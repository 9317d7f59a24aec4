"""The keras-mtl command and its verbs."""
