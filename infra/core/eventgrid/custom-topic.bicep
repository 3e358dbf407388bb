metadata description = 'An Event Grid custom topic for kvlink\'s CloudEvents (kvlink.group.updated, kvlink.audit.completed), published with Entra ID only.'

param name string
param location string = resourceGroup().location
param tags object = {}

resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  // checkov:skip=CKV_AZURE_193:kvlink publishes from a Flex Consumption app without VNet integration, so the topic needs its public endpoint; local auth is disabled, publishing needs EventGrid Data Sender
  // checkov:skip=CKV_AZURE_191:A topic identity only authenticates deliveries to subscribers' destinations; kvlink subscribes nothing here, and subscribers choose their own delivery identity
  name: name
  location: location
  tags: tags
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

output id string = topic.id
output name string = topic.name
output endpoint string = topic.properties.endpoint
