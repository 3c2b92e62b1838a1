"""The online half: stores, upload, and the fetcher that serves values equal to the offline ones."""
