"""One request through embed, retrieve and generate under a deadline and a budget per stage."""
