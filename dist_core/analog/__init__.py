"""Analog in-memory computing emulation: device response models, Analog SGD, Tiki-Taka."""
