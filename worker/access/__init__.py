"""(filled in by the untangling commit)"""
