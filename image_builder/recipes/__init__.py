"""The recipes of gridvm's own guest images (``image_builder.recipe.default_recipe``)."""
