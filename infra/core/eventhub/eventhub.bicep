metadata description = 'An Event Hubs namespace and the hub that receives the vaults\' AuditEvent diagnostic logs.'

param namespaceName string
param eventHubName string
param location string = resourceGroup().location
param tags object = {}

@allowed([
  'Basic'
  'Standard'
])
param sku string = 'Standard'

@description('How long the hub keeps audit records: a stopped function app catches up within this window (the nightly audit covers the rest).')
@minValue(1)
@maxValue(7)
param messageRetentionInDays int = 7

@description('Name of the namespace rule that diagnostic settings use to stream logs (Azure Monitor needs Manage, Send and Listen).')
param diagnosticsRuleName string = 'kvlink-diagnostics'

resource eventHubNamespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: sku
    tier: sku
    capacity: 1
  }
  properties: {
    // Diagnostic settings stream through a SAS rule only (MicrosoftDocs/azure-docs#119932), so local auth
    // stays on; kvlink itself reads the hub with its identity (Azure Event Hubs Data Receiver).
    disableLocalAuth: false
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }

  resource hub 'eventhubs' = {
    name: eventHubName
    properties: {
      partitionCount: 2
      messageRetentionInDays: messageRetentionInDays
    }
  }

  resource diagnosticsRule 'authorizationRules' = {
    name: diagnosticsRuleName
    properties: {
      rights: [
        'Listen'
        'Manage'
        'Send'
      ]
    }
  }
}

output namespaceId string = eventHubNamespace.id
output namespaceName string = eventHubNamespace.name
// serviceBusEndpoint is 'https://<namespace>.servicebus.windows.net:443/' (the suffix differs in sovereign clouds).
output fullyQualifiedNamespace string = split(split(eventHubNamespace.properties.serviceBusEndpoint, '//')[1], ':')[0]
output eventHubId string = eventHubNamespace::hub.id
output eventHubName string = eventHubNamespace::hub.name
output diagnosticsRuleId string = eventHubNamespace::diagnosticsRule.id
