metadata description = 'A Linux function app on the Flex Consumption plan, running as a user-assigned identity, deployed from a blob container.'

param name string
param planName string
param location string = resourceGroup().location
param tags object = {}

@description('Resource id of the user-assigned identity the app runs as (and deploys its package with).')
param identityId string

@description('Storage account holding the deployment package container.')
param storageAccountName string
param deploymentContainerName string

@allowed([
  'python'
])
param runtimeName string = 'python'
// 3.13: GA for Azure Functions, and new Python versions go to Flex only (docs/deploy.md, "Python version").
// 3.11 stays allowed as the way back: requirements.txt serves both.
@allowed([
  '3.11'
  '3.13'
])
param runtimeVersion string = '3.13'

@description('Upper bound on instances; kept low because Azure DevOps throttles per identity, not per instance.')
param maximumInstanceCount int = 40
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('All app settings, by name (the whole set: settings not listed are removed).')
param appSettings object

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy is a cost and region choice; an outage delays kvlink (Event Grid retries for 24 hours, the Event Hub keeps 7 days, the nightly audit repairs the rest)
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:Event Grid delivers to the function and operators call the HTTP API over the public endpoint (no VNet); HTTP routes need a function key, /api/health is anonymous and returns only status and version
  // checkov:skip=CKV_AZURE_17:HTTP callers authenticate with function keys and Event Grid delivers through its AzureFunction endpoint; nobody presents client certificates
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero; failover comes from the platform and from retries (Event Grid, Event Hubs, the audit), not from always-ready instances
  // checkov:skip=CKV_AZURE_78:Flex Consumption has no FTP and refuses siteConfig.ftpsState (ARM error 51021; "Flex Consumption plan deprecations" in Microsoft Learn's functions-app-settings); tests/test_infra.py keeps it out
  // checkov:skip=CKV_AZURE_213:App Service health check is not used on Flex Consumption (instances are platform-managed and scale to zero); GET /api/health is there for external probes
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      http20Enabled: true
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: runtimeName
        version: runtimeVersion
      }
    }
  }
}

output id string = functionApp.id
output name string = functionApp.name
output uri string = 'https://${functionApp.properties.defaultHostName}'
