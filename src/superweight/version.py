"""The package version, in a leaf module that anything may import."""
VERSION = "0.1.0"
