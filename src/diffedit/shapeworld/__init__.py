"""ShapeWorld: the synthetic world of the embedded model and of the ShapeEdit benchmark (../shared/SHAPEWORLD.md)."""
