"""KAM, the key account manager: users, sessions, clients with tiers and budgets, API keys,
worker credentials, versioned master templates and client requests. It is the authority every
other service asks who a caller is."""
