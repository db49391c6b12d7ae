"""Finding, fetching, converting and loading models."""
import threading

# transformers resolves its names lazily, and two threads touching them for the first time at
# once can see "module 'transformers' has no attribute 'AutoConfig'". Everything that builds
# models with transformers (loading, converting) holds this lock; app sessions are threads.
TRANSFORMERS_LOCK = threading.RLock()
