"""Distillation losses, one small module per method, selected by name through ``registry``."""
