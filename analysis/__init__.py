"""Pure computations on Records and arrays: no Streamlit, no store, no model loading."""
