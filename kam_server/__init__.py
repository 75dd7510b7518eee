"""KAM, the key account manager: users, sessions, clients with tiers and budgets, API keys,
worker credentials, versioned master templates, client requests with their budget ledger and
rate limits, webhooks and the audit log. It is the authority every other service asks who a
caller is."""
