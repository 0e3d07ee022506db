"""Krita-free logic: nothing here imports krita or PyQt5."""
