"""Switchyard: one frozen base model, many small adapters, trained and served over HTTP."""
