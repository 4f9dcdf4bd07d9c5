"""The Gradio app: one module per tab plus app.py that assembles them. Widgets and wiring only."""
