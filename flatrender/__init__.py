"""FlatRender render orchestrator."""
