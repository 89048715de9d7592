"""Request-rate, token-rate and concurrency limits per key and per account.

Counters live in process (memory.py) or in Redis (redis_limiter.py) behind one
small interface (base.py); enforcer.py turns a principal's limits into checks,
HTTP-style headers and errors. Money is never decided here: the monthly budget
and spend limits are conditional UPDATEs in the database (store/holds.py).
"""
