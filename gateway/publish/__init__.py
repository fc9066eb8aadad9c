"""Publishing shared care views to the regional Health Information Exchange (HIE)."""
