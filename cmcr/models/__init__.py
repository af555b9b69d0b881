"""cmcr.models"""
