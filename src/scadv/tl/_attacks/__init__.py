"""Gradient attacks in model space: the engine, its front end, pgd, fgsm, robust accuracy."""
