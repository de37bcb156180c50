"""Callback receiver and push-first waiting (placeholder until the webhooks work lands)."""
