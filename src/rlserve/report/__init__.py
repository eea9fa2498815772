"""Tables, plots and run outputs (matplotlib, Parquet, JSON)."""
