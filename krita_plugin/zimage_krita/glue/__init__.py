"""Krita side: docker widget, actions, canvas I/O. Imports krita and PyQt5."""
