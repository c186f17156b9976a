kumo.on('init', function()
nats = kumo.nats.connect {
servers = { '127.0.0.1:4222' },
}
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
if domain == 'nats' then
-- Use the `make.nats` event to handle delivery
-- of nats log records
return kumo.make_queue_config {
protocol = {
custom_lua = {
-- this will cause an event called `make.nats` to trigger.
-- You can pick any name for this event, so long as it doesn't
-- collide with a pre-defined event, and so long as you bind
-- to it with a kumo.on call
constructor = 'make.nats',
},
},
}
end
return kumo.make_queue_config {}
end)
-- This is a user-defined event that matches up to the custom_lua
-- constructor used in `get_queue_config` below.
-- The connection must be established before in order to "publish"
-- messages to their destination.
kumo.on('make.nats', function(domain, tenant, campaign)
nats:publish {
subject = 'subject',
payload = message:get_data(),
}
end)
