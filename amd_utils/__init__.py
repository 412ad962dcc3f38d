"""Shared pieces of the AMD trainers: the objective (``objective``) and the noising conventions of the
model families they distill (``parameterization``)."""
