"""Recipes: declarative, versioned descriptions of where an architecture's heads sit and how a build runs."""

from pearzoo.recipe.schema import Recipe

__all__ = ["Recipe"]
