"""adverSCarial-style gene-level attacks on any classifier: modifications, batched exact
evaluators and the searches (single_gene, max_change, cgd, grid, random_walk, overview)."""
