"""Experiment configs (ml_collections), one file per paper-table row family.

A package so that a config reads ``from configs import common`` from any directory: the
editable install (``pip install -e .``) maps ``configs`` to this folder. The CLI still loads
a config by its path: ``--config=configs/vit/deit_i1k.py:B/16``.
"""
