"""Flow-matching backbones (SD3, FLUX): velocity-difference masks, FlowEdit and inverted-flow decoders (docs/flow.md)."""
