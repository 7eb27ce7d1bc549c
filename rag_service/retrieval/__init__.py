"""Dense and lexical search over the live passages, their rank fusion, packing under the context budget."""
