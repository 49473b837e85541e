"""Comparing atlases: aligned layouts across variants, the measurements that explain them, and the claims they test."""
