"""How adapters run: slots and tiers (cache), multi-adapter layers, the engine, the batcher."""
