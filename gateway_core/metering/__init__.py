"""Metering: balances, prices, the ledger and usage records."""
