"""Pure figure builders: data in, plotly figures or PIL images out. No Streamlit here."""
