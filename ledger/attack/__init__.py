"""The attack engine: concurrent deductions against one account, measured."""
