"""Tables, figures and the audit that turn evaluation files into the paper's results."""
