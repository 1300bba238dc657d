"""Loops an API process runs beside its routes (events hub, webhook deliverer, reaper), built on plain functions
that the Modal Crons call too."""
