"""The build stage: what a bake leaves beside its image (inventory, SBOM, provenance) and how two images compare."""
