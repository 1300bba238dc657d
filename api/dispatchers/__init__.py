"""dispatchers"""
